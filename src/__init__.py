"""GhostNet on Oxford-IIIT Pet for MindSpore: network, data, training, int8."""
