"""`XPeftTrainer`: a `transformers.Trainer` that trains an X-PEFT model the way `xpeft fit` does.

Two things the plain Trainer gets wrong for a wrapper that is no `PreTrainedModel`:
- its default optimizer trains every parameter at one learning rate (`args.learning_rate`), where
  masks, bottleneck LN and head need their own (5e-2, 1e-2, 3e-3 by default): left out, a fit
  silently underfits. Here the default optimizer is `xpeft_optimizer(model)`; the Trainer's LR
  scheduler (linear, with `warmup_ratio`) then scales each group's own rate.
- `save_model(dir)` writes the whole encoder's state dict (90 MB for MiniLM). Here it writes what
  `save_pretrained` writes: the profile (`profile.xpm`, a few KB), its config and its bank's hash.

Its own module, so that importing the library does not import transformers' Trainer.
"""

from __future__ import annotations

from transformers import Trainer

from .peft_api import XPeftModelForSequenceClassification, xpeft_optimizer


class XPeftTrainer(Trainer):
    def create_optimizer(self, *args, **kwargs):
        if self.optimizer is None:
            self.optimizer = xpeft_optimizer(self.model)
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        folder = output_dir or self.args.output_dir
        model = self.model
        if self.args.should_save and isinstance(model, XPeftModelForSequenceClassification) and folder:
            model.save_pretrained(folder)
        elif self.args.should_save:  # not an X-PEFT model: what the Trainer does for any other
            super().save_model(output_dir, _internal_call)
