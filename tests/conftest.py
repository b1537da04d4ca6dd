import torch

# Small tensors: one thread avoids spin-wait overheads that dominate on 2 shared cores.
torch.set_num_threads(1)
