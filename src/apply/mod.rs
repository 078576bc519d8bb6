//! `apply`: base ⊕ α·residual. Matching the residual's tensors to the
//! base's, the base guard, and the strategies that decide how the sum is
//! written (fresh, search, budgets and auto, adapter).

pub mod adapter;
pub mod budget;
pub mod guard;
pub mod instruct;
pub mod matching;
