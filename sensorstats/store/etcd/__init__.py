"""The etcd store: the only package that speaks to etcd (see `store` for the design)."""
