//! Ablation shorthands over [`Intervention`]s.

use crate::hooks::{BlockHook, HookPoint, Hooks};
use crate::intervention::{Intervention, Site};

/// Hooks that zero-ablate each (layer, head) in `heads` (its `hook_z`) at every position.
///
/// ```
/// // Knock out L1H0 and L1H2 together.
/// let hooks = hooklens::analysis::ablation::zero_ablate_heads(&[(1, 0), (1, 2)]);
/// assert_eq!(hooks.sites().count(), 2);
/// ```
pub fn zero_ablate_heads<'a>(heads: &[(usize, usize)]) -> Hooks<'a> {
    heads.iter().fold(Hooks::none(), |hooks, &(layer, head)| {
        hooks.intervene(
            Site::head(HookPoint::Block(layer, BlockHook::Z), head),
            Intervention::Zero,
        )
    })
}
