"""Named settings of registered losses that the papers use; ``get_loss`` accepts them as names."""

PRESETS: dict[str, tuple[str, dict]] = {
    # The public DRPO reference ships delta ("epsilon") = 12.5: the weight's zero-crossing sits at a
    # probability shift of 12.5, never reached (w stays within [0.92, 1.08]: drpo.losses.checks), so it is a
    # weak pull towards mu on every token; measured in docs/results/delta (2 of 5 seeds collapsed under strong
    # staleness). The recommended delta is DRPO_DELTA, drpo's default.
    "drpo_reference": ("drpo", {"delta": 12.5}),
    "ppo_clip_higher": ("ppo_clip", {"eps_low": 0.2, "eps_high": 0.28}),  # DAPO clip-higher
    "minirl": ("ppo_clip", {"eps_low": 0.2, "eps_high": 0.28, "anchor": "recompute"}),  # anchored on pi_old
}
