"""Manifest hash of a datanet version: `merkle_root` here is `common.merkle.manifest_root` (its docstring gives the
exact construction), the Merkle tree the ledger's checkpoints use, over the sorted, de-duplicated row hashes."""

from common.merkle import manifest_root as merkle_root

__all__ = ["merkle_root"]
