"""The node agent: in sim mode the local quoting service; in hardware mode a collateral cache."""
