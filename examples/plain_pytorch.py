import torch

import metalr.controllers
from metalr.signals import SignalTracker

x = torch.randn(512, 20)
y = (x.sum(dim=1) > 0).long()
model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
ctrl = metalr.controllers.build("cosine", opt, total_steps=200)
# ctrl = metalr.load_pretrained(optimizer=opt, total_steps=200)  # the pretrained meta-controller instead
tracker = SignalTracker(model.parameters(), opt, requires=ctrl.requires, total_steps=200)
for _ in range(200):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    signals = tracker.collect(loss=loss)  # gradient statistics: after backward, before step
    opt.step()
    ctrl.step(signals)  # sets the LR of the next step
