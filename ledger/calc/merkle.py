"""The checkpoints' Merkle tree over transaction hashes (RFC 6962): now `common.merkle`, shared with the datanets'
manifests; these names stay for the auditors' scripts and tests that import them from here."""

from common.merkle import inclusion_proof, merkle_root, verify_inclusion

__all__ = ["inclusion_proof", "merkle_root", "verify_inclusion"]
