pub mod collector;
pub mod target;
