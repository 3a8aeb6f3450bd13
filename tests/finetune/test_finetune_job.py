"""The finetuning job's shared pieces: batches of examples, what trains, steps per epoch."""

import pytest
import torch

from scratchllm.config.finetune import ClassifyConfig, InstructConfig
from scratchllm.config.model import ModelConfig
from scratchllm.errors import ConfigError, UserError
from scratchllm.finetune.batches import ExampleBatches, fixed_batches
from scratchllm.finetune.job import count_trainable, set_trainable, steps_for
from scratchllm.model import GPT


def test_batches_cover_each_epoch_once_and_resume_exactly():
    examples = list(range(23))
    b = ExampleBatches(examples, 4, list, seed=7)
    assert b.batches_per_epoch == 5
    epoch0 = [next(b) for _ in range(5)]
    seen = sorted(x for batch in epoch0 for x in batch)
    assert len(seen) == 20 and len(set(seen)) == 20  # drop_last: 3 left out, none twice
    epoch1 = [next(b) for _ in range(2)]
    assert epoch1 != epoch0[:2]  # a new permutation each epoch
    state = b.state_dict()
    after = [next(b) for _ in range(7)]
    c = ExampleBatches(examples, 4, list, seed=7)
    c.load_state_dict(state)
    assert [next(c) for _ in range(7)] == after


def test_bucketed_batches_group_similar_lengths():
    lengths = [1 + (i * 37) % 100 for i in range(400)]
    b = ExampleBatches(list(range(400)), 8, list, seed=1, lengths=lengths, bucket=True)
    plain = ExampleBatches(list(range(400)), 8, list, seed=1, lengths=lengths)

    def waste(batches):  # padding positions when each batch pads to its longest
        return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch) for batch in batches)

    bucketed = [next(b) for _ in range(b.batches_per_epoch)]
    assert sorted(x for batch in bucketed for x in batch) == list(range(400))
    assert waste(bucketed) < waste([next(plain) for _ in range(plain.batches_per_epoch)]) / 4


def test_batches_errors_and_fixed_batches():
    with pytest.raises(UserError, match="fewer than one batch"):
        ExampleBatches([1, 2], 8, list)
    with pytest.raises(UserError, match="empty"):
        ExampleBatches([], 8, list)
    b = ExampleBatches(list(range(10)), 2, list)
    with pytest.raises(UserError, match="n_examples=10"):
        b.load_state_dict({"seed": 0, "epoch": 0, "index": 0, "batch_size": 2, "n_examples": 12})
    assert fixed_batches(list(range(5)), 2, list) == [[0, 1], [2, 3], [4]]
    assert fixed_batches(list(range(5)), 2, list, limit=2) == [[0, 1], [2, 3]]


def _model(**changes):
    return GPT(ModelConfig(vocab_size=64, context_length=16, n_layer=3, n_head=2, n_embd=16, **changes))


def test_trainable_policies():
    m = _model()
    set_trainable(m, ClassifyConfig(trainable="last-blocks", trainable_blocks=1))
    trains = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")
              for n, p in m.named_parameters() if p.requires_grad}
    # lm_head is tied to tok_emb here: training the head trains that shared matrix
    assert trains == {"blocks.2", "norm_f", "tok_emb"}
    m = _model(tie_weights=False)
    set_trainable(m, ClassifyConfig(trainable="head"))
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    m = _model()
    set_trainable(m, InstructConfig())
    assert all(p.requires_grad for p in m.parameters())
    trainable, total = count_trainable(m)
    assert trainable == total == m.num_params()


def test_new_modules_always_train_and_steps_per_epoch():
    m = _model(tie_weights=False, n_classes=2)
    set_trainable(m, ClassifyConfig(trainable="head"), new_modules=("lm_head",))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"lm_head.weight", "lm_head.bias"}
    assert m(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 2)
    c = ClassifyConfig().train
    assert steps_for(c, 130) == 650  # 5 epochs of 130 batches
    assert steps_for(c.replace(grad_accum=4), 130) == 163
    assert steps_for(c.replace(epochs=None, max_steps=17), 130) == 17


def test_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="split"):
        ClassifyConfig(split=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="trainable"):
        ClassifyConfig.from_dict({"trainable": "some"})
    with pytest.raises(ConfigError, match="tie_weights"):
        ModelConfig(n_classes=2)
