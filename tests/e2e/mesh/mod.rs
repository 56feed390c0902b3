//! The mesh: balancing, health and ejection, announcing.

mod announce;
mod balancing;
mod ejection;
mod health;
