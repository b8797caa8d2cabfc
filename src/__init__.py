"""GhostNet on Oxford-IIIT Pet for MindSpore: network, data, training, int8."""
import os

# MindSpore's oneDNN runs on OpenMP, whose idle threads spin by default and take the cores
# from MindSpore's own threads between two kernels: on CPU, GhostNet ran 2x slower. libgomp
# reads this once, when MindSpore first loads it, so entry scripts import src first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
