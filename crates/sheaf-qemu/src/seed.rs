//! Seed images (being written).
