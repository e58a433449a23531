//! placeholder

pub mod apiserver;
pub mod r#gen;
