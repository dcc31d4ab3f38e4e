pub use rewardsds_engine as engine;

/// The Bevy plugin (cargo feature `plugin`).
#[cfg(feature = "plugin")]
pub use bevy_rewardsds as plugin;
