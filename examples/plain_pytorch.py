import torch

import metalr

x = torch.randn(512, 20)
y = (x.sum(dim=1) > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
ctrl = metalr.hook("cosine", opt, total_steps=200)
# ctrl = metalr.hook("pretrained", opt, total_steps=200)  # the pretrained meta-controller instead
for _ in range(200):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()  # the controller reads gradient statistics here, through the optimizer's step hook
    ctrl.step(loss)  # the one added line: sets the LR of the next step
