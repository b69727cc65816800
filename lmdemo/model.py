"""The LSTM language model: embedding -> stacked LSTM -> dropout -> linear decoder.

`PyTorchModelHubMixin` gives it `save_pretrained` / `from_pretrained` / `push_to_hub` with the
Hub's conventions (`config.json` + `model.safetensors`, no pickle); `lmdemo.checkpoint` adds the
tokenizer, the metrics log and the model card around that.
"""


import math

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.nn import functional as F

from lmdemo.config import Config, adaptive_cutoffs

State = tuple[torch.Tensor, torch.Tensor]


class LSTMLanguageModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="lmdemo",
    tags=["lstm", "language-model", "lmdemo"],
    pipeline_tag="text-generation",
):
    def __init__(self, config: Config):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("config.vocab_size must be set (from the tokenizer) before building a model")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.emb_size)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.emb_size, config.hidden_size, config.num_layers,
                            dropout=config.dropout if config.num_layers > 1 else 0.0, batch_first=True)
        tied_projection = config.tie_weights and config.emb_size != config.hidden_size
        # Tying needs the decoder's input size to equal the embedding size: a projection bridges them.
        self.projection = nn.Linear(config.hidden_size, config.emb_size, bias=False) if tied_projection else None
        decoder_in = config.emb_size if config.tie_weights else config.hidden_size
        self.decoder = nn.Linear(decoder_in, config.vocab_size)
        # Adaptive softmax: the decoder's rows stay the word vectors (so tying holds); the head scores the
        # frequent words plus one logit per cluster of rarer words, which this layer adds.
        self.cutoffs = (config.cutoffs or adaptive_cutoffs(config.vocab_size)) if config.adaptive_softmax else []
        self.clusters = nn.Linear(decoder_in, len(self.cutoffs) - 1) if self.cutoffs else None
        self._init_weights()
        if config.tie_weights:
            self.decoder.weight = self.embedding.weight

    def _init_weights(self) -> None:
        """LSTM, projection and decoder uniform ±1/sqrt(hidden), zero decoder bias; the embedding below.

        A tied embedding is also the decoder, so it starts small (uniform ±0.1) to keep the first logits
        flat. An untied one starts at unit scale: with ±0.1 a character model's LSTM barely sees its
        input and sat on the unigram loss for its first ~1M characters (measured: train loss 3.32 vs
        2.38 after 60 steps of the shakespeare-char preset).
        """
        bound = 1.0 / math.sqrt(self.config.hidden_size)
        if self.config.tie_weights:
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        else:
            nn.init.normal_(self.embedding.weight, 0.0, 1.0)
        for name, weight in self.lstm.named_parameters():
            if name.startswith("weight"):
                nn.init.uniform_(weight, -bound, bound)
        if self.projection is not None:
            nn.init.uniform_(self.projection.weight, -bound, bound)
        nn.init.uniform_(self.decoder.weight, -bound, bound)
        nn.init.zeros_(self.decoder.bias)
        if self.clusters is not None:
            nn.init.uniform_(self.clusters.weight, -bound, bound)
            nn.init.zeros_(self.clusters.bias)

    def forward(self, ids: torch.Tensor, state: State | None = None,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """Logits [B, T, V] for ids [B, T] (log-probabilities with the adaptive softmax), or with targets
        [B, T] the mean loss in nats, which the adaptive softmax computes without scoring every word;
        and the state to pass to the next call."""
        output, state = self.lstm(self.drop(self.embedding(ids)), state)
        output = self.drop(output)
        if self.projection is not None:
            output = self.projection(output)
        if targets is not None:
            return self._loss(output.flatten(0, 1), targets.flatten()), state
        return self.logits(output), state

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of every word for decoder inputs [..., D]; softmax of them is the model's distribution."""
        if self.clusters is None:
            return self.decoder(features)
        weight, bias, cuts = self.decoder.weight, self.decoder.bias, self.cutoffs
        return adaptive_log_probs(self._head(features), [F.linear(features, weight[low:high], bias[low:high])
                                                         for low, high in zip(cuts, cuts[1:])])

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        frequent = F.linear(features, self.decoder.weight[:self.cutoffs[0]], self.decoder.bias[:self.cutoffs[0]])
        return head_log_probs(frequent, self.clusters(features))

    def _loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of targets [N] from features [N, D]."""
        if self.clusters is None:
            return F.cross_entropy(self.decoder(features).float(), targets)
        weight, bias, cuts = self.decoder.weight, self.decoder.bias, self.cutoffs
        cluster = torch.bucketize(targets, torch.tensor(cuts[:-1], device=targets.device), right=True)
        head_target = torch.where(cluster == 0, targets, cuts[0] + cluster - 1)
        log_likelihood = self._head(features).gather(1, head_target[:, None]).squeeze(1)
        for index, (low, high) in enumerate(zip(cuts, cuts[1:]), start=1):
            rows = (cluster == index).nonzero().squeeze(1)
            if rows.numel():
                tail = F.linear(features[rows], weight[low:high], bias[low:high]).float().log_softmax(-1)
                log_likelihood = log_likelihood.index_add(0, rows, tail.gather(1, targets[rows, None] - low).squeeze(1))
        return -log_likelihood.mean()

    def num_parameters(self) -> int:
        """Distinct trainable parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())


def head_log_probs(frequent: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """The adaptive softmax's head: log-probabilities of the frequent words [..., C] and of each tail cluster."""
    return torch.cat([frequent, clusters], -1).float().log_softmax(-1)


def adaptive_log_probs(head: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
    """Every word's log-probability from the head's (`head_log_probs`) and each tail cluster's word scores: the one
    assembly of the adaptive softmax, for the model's `logits` and for `lmdemo.generation`'s packed decoder."""
    cutoff = head.size(-1) - len(tails)
    return torch.cat([head[..., :cutoff], *(head[..., cutoff + index, None] + tail.float().log_softmax(-1)
                                            for index, tail in enumerate(tails))], -1)
