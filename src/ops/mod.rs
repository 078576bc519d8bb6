//! The other operations on models: `extract` (instruct − base) and
//! `compare` (two models, tensor by tensor). They return data; the CLI
//! prints it.

pub mod compare;
pub mod convert;
pub mod extract;
pub mod inspect;
