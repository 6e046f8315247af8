"""The data: Fashion-MNIST's files fetched and verified, then split and standardized."""
