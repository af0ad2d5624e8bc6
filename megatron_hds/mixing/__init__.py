"""Online data-mixing schedulers (static, uniform, ODM, AC-ODM, HDS)."""
