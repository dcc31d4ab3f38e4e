pub use rewardsds_engine as engine;
