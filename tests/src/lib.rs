//! placeholder

pub mod apiserver;
pub mod r#gen;
pub mod netns;
