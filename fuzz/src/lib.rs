//! Sluice's fuzz targets: see `entry`.
pub mod entry;
