//! Files: hard links, host-managed parts of a home, disk quotas, private state files.
