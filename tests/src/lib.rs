//! placeholder

pub mod apiserver;
pub mod lab;
pub mod r#gen;
pub mod netns;
