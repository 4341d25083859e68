"""The transformers engine: a deployed base loaded once through the loading layer, its deployed modifiers attached
as PEFT adapters, the modifier chosen per request (no reload to switch; concurrent requests batched, modifiers mixed
per row: batching.py)."""

from __future__ import annotations

from llora_cli.engine.base import Deployment, Engine
from llora_store import Store, rules
from llora_store.models import Artifact


class TransformersEngine(Engine):
    """The transformers engine: the base loaded once through the loading layer, each deployed modifier loaded
    once as a PEFT adapter. Concurrent requests share forward passes, modifiers mixed per row (batching.py)."""

    engine = "transformers"

    def __init__(self, store: Store, deployment: Deployment, *, max_batch: int = 8, lora_path: str = "rows") -> None:
        from llora_cli.engine.batching import Batcher, TransformersBatches
        from llora_cli.loading import load_model

        super().__init__(store, deployment)
        self.tokenizer, self.model, self.plan = load_model(store.path_of(deployment.base.id))
        self.model.eval()
        self.load_info = {"strategy": self.plan.strategy, "dtype": self.plan.dtype, "device": self.plan.device}
        self.row_lora: dict[str, bool] = {}  # adapter -> runs in mixed batches (plain LoRA on Linear layers)
        self.runner = TransformersBatches(lambda: self.model, self.tokenizer,
                                          row_lora=lambda a: self.row_lora.get(a, False), lora_path=lora_path)
        self.batcher = Batcher(self.runner, max_batch=max_batch)
        for m in deployment.modifiers:
            self._attach(m)
        self.runner.prepare(list(self.adapters))

    def _attach(self, modifier: Artifact) -> None:
        from llora_cli.engine.batching import row_lora_supported

        rules.check_modifier_base(modifier, self.deployment.base)  # R6
        self.runner.adapters_changed()
        path = str(self.store.path_of(modifier.id))
        if not self.adapters:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=modifier.id).eval()
        else:
            self.model.load_adapter(path, adapter_name=modifier.id)
        self.adapters[modifier.id] = modifier
        self.row_lora[modifier.id] = row_lora_supported(self.model, modifier.id)

    def attach(self, modifier: Artifact) -> None:
        super().attach(modifier)
        self.batcher.call(lambda: self.runner.prepare(list(self.adapters)))

    supports_depth = True

    def load_layer_adapters(self, router: Artifact) -> None:
        """The layer adapters of ``router``'s depth heads (its ``meta["depth"]["layer_set"]``), loaded once on the
        model thread and checked against the base (R6); refused when their count differs from the model's layers."""
        set_id = (router.meta.get("depth") or {}).get("layer_set")
        if set_id is None or getattr(self, "_layer_set", None) == set_id:
            return

        def load() -> None:
            from llora_cli.router.depth import distill
            from llora_cli.router.depth.layers import decoder_layers
            from llora_store.errors import BadInput

            adapters = distill.load(self.store, set_id, self.deployment.base)
            count = len(decoder_layers(self.model))
            if len(adapters) != count:
                raise BadInput(f"router '{router.name}' replaces layers of a {len(adapters)}-layer model; "
                               f"'{self.deployment.base.name}' has {count}")
            self.runner.layer_adapters = adapters
            self._layer_set = set_id

        self.batcher.call(load)

    def _detach(self, modifier_id: str) -> None:
        self.runner.adapters_changed()
        self.row_lora.pop(modifier_id, None)
        if len(self.adapters) > 1:
            self.model.delete_adapter(modifier_id)
        else:
            self.model = self.model.unload().eval()
