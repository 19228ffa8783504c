"""Named settings of registered losses that the papers and frameworks use; ``get_loss`` accepts them as names."""

PRESETS: dict[str, tuple[str, dict]] = {
    # The public DRPO reference ships delta ("epsilon") = 12.5: the weight's zero-crossing sits at a
    # probability shift of 12.5, never reached (w stays within [0.92, 1.08]: drpo.losses.checks), so it is a
    # weak pull towards mu on every token; measured in docs/results/delta (2 of 5 seeds collapsed under strong
    # staleness). The recommended delta is DRPO_DELTA, drpo's default.
    "drpo_reference": ("drpo", {"delta": 12.5}),
    "ppo_clip_higher": ("ppo_clip", {"eps_low": 0.2, "eps_high": 0.28}),  # DAPO clip-higher
    # clip-higher anchored on pi_old with no correction for mu at all (what `minirl` meant before it followed
    # the paper): staleness is clipped, the sampler's mismatch is ignored
    "ppo_clip_recompute": ("ppo_clip", {"eps_low": 0.2, "eps_high": 0.28, "anchor": "recompute"}),
    # Decoupled PPO with a rollout correction, thresholds as the sources ship them:
    # verl RolloutCorrectionConfig.decoupled_token_is(threshold=2.0); TRL token_truncate
    "ppo_tis": ("decoupled_ppo", {"level": "token", "mode": "truncate", "is_high": 2.0}),
    # IcePop's two-sided token mask, verl decoupled_token_icepop(threshold=5.0, threshold_lower=0.5)
    "ppo_mis": ("decoupled_ppo", {"level": "token", "mode": "mask", "is_low": 0.5, "is_high": 5.0}),
    # verl decoupled_seq_is(threshold=2.0): the product of pi_old/mu over the response, truncated
    "ppo_seq_tis": ("decoupled_ppo", {"level": "sequence", "mode": "truncate", "is_high": 2.0}),
    # verl decoupled_seq_is_rs(rs_threshold="0.5_2.0"): sequences whose product leaves [0.5, 2] are rejected
    "ppo_seq_mis": ("decoupled_ppo", {"level": "sequence", "mode": "mask", "is_low": 0.5, "is_high": 2.0}),
    # verl decoupled_geo_rs(rs_threshold="0.999_1.001"): rejection by the geometric mean (no IS weight in
    # verl's preset; here the kept sequences keep their weight, within 0.1% of 1)
    "ppo_geo_mis": ("decoupled_ppo", {"level": "geometric", "mode": "mask", "is_low": 0.999, "is_high": 1.001}),
    # MiniRL (Zheng et al. 2025, "Stabilizing Reinforcement Learning with LLMs: Formulation and Practices"):
    # J = M_t * sg(pi/mu) * A * log pi, M_t the clip-higher mask on pi/pi_old; sg(pi/mu) = r * pi_old/mu,
    # i.e. decoupled PPO with the token IS weight pi_old/mu, which the formulation does not truncate
    "minirl": ("decoupled_ppo", {"eps_low": 0.2, "eps_high": 0.28, "level": "token", "mode": "truncate",
                                 "is_high": None}),
}
