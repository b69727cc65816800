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
        # no dropout inside: between layers, `_recurrent` drops with `_dropout`'s masks (faster ones, see there)
        self.lstm = nn.LSTM(config.emb_size, config.hidden_size, config.num_layers, batch_first=True)
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
        and the state to pass to the next call.

        In training, --alpha and --beta add AWD-LSTM's activation penalties to the loss's gradient but not to its
        value, which stays the cross-entropy that the log reports: `penalty - penalty.detach()` is exactly zero.
        """
        features, state, recurrent, output = self._layers(ids, state)
        if targets is None:
            return self.logits(features), state
        loss = self._loss(features.flatten(0, 1), targets.flatten())
        if self.training and (self.config.alpha or self.config.beta):
            penalty = self._activation_penalty(recurrent, output)
            loss = loss + (penalty - penalty.detach())
        return loss, state

    def features(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """The decoder's inputs [B, T, D] for ids [B, T] (what `logits` and `token_log_probs` score) and the state
        after them: a reader that wants some tokens' probabilities need not score every word at every position."""
        features, state, _, _ = self._layers(ids, state)
        return features, state

    def _layers(self, ids: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State, torch.Tensor,
                                                                        torch.Tensor]:
        """Features, state, and the top layer's output before and after dropout (the activation penalties')."""
        recurrent, state = self._recurrent(self._dropout(self._embed(ids)), state)
        output = self._dropout(recurrent)
        return (self.projection(output) if self.projection is not None else output), state, recurrent, output

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The word vectors of ids [B, T]; in training, --dropout-embedding zeroes whole words.

        A tied embedding's gradient is sent sparse (the rows of this batch's words): the decoder's dense gradient
        of the same matrix absorbs it, where a dense one would zero-fill and add a whole [vocab, emb] matrix.
        """
        weight = self.embedding.weight
        vectors = F.embedding(ids, weight, sparse=self.config.tie_weights)
        if self.training and self.config.dropout_embedding:
            vectors = vectors * dropout_mask((weight.size(0), 1), self.config.dropout_embedding, vectors)[ids]
        return vectors

    def _dropout(self, activations: torch.Tensor) -> torch.Tensor:
        """--dropout on activations [B, T, D] in training: a mask per token, or with --dropout-locked one per
        sequence. `dropout_mask`'s masks, not `nn.Dropout`'s: the same distribution, drawn 4x faster (1.1 against
        4.4 ms for a 20 x 35 x 650 window; three masks a step were 10 % of a step at the issue's shape)."""
        if not (self.training and self.config.dropout):
            return activations
        batch, tokens, width = activations.shape
        shape = (batch, 1, width) if self.config.dropout_locked else (batch, tokens, width)
        return activations * dropout_mask(shape, self.config.dropout, activations)

    def _recurrent(self, inputs: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """The stacked LSTM over inputs [B, T, E]: in one call, or in training layer by layer where a layer needs
        what `nn.LSTM` cannot do (`_dropout`'s masks between layers, a dropped hidden-to-hidden matrix). Both use
        the `nn.LSTM`'s own weights, so a model folder is the same either way."""
        config, lstm = self.config, self.lstm
        if not (self.training and (config.weight_drop or (config.dropout and config.num_layers > 1))):
            return lstm(inputs, state)
        if state is None:
            zeros = inputs.new_zeros(config.num_layers, inputs.size(0), config.hidden_size)
            state = (zeros, zeros)
        output, last_h, last_c = inputs, [], []
        for layer in range(config.num_layers):
            w_ih, w_hh, b_ih, b_hh = (getattr(lstm, f"{name}_l{layer}")
                                      for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            if config.weight_drop:
                w_hh = w_hh * dropout_mask(w_hh.shape, config.weight_drop, w_hh)
            if layer:
                output = self._dropout(output)
            output, h, c = torch.lstm(output, (state[0][layer:layer + 1], state[1][layer:layer + 1]),
                                      [w_ih, w_hh, b_ih, b_hh], True, 1, 0.0, self.training, False, True)
            last_h.append(h)
            last_c.append(c)
        return output, (torch.cat(last_h), torch.cat(last_c))

    def _activation_penalty(self, recurrent: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        """AWD-LSTM's AR (alpha x mean square of the last layer's dropped output: keeps activations small) plus
        TAR (beta x mean square of its undropped step-to-step change: keeps the state from jumping)."""
        penalty = recurrent.new_zeros((), dtype=torch.float32)
        if self.config.alpha:
            penalty = penalty + self.config.alpha * dropped.float().pow(2).mean()
        if self.config.beta and recurrent.size(1) > 1:
            penalty = penalty + self.config.beta * (recurrent[:, 1:] - recurrent[:, :-1]).float().pow(2).mean()
        return penalty

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Scores of every word for decoder inputs [..., D]; softmax of them is the model's distribution."""
        if self.clusters is None:
            return self.decoder(features)
        (frequent, bias), *tails = self._decoder_clusters()
        return adaptive_log_probs(self._head(features, frequent, bias),
                                  [F.linear(features, weight, bias) for weight, bias in tails])

    def _decoder_clusters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The decoder's weight and bias for the head's words, then for each tail cluster's: one split, whose
        gradient is one concatenation, where a slice per cluster zero-fills a [vocab, D] gradient each."""
        sizes = [high - low for low, high in zip([0, *self.cutoffs], self.cutoffs)]
        return list(zip(self.decoder.weight.split(sizes), self.decoder.bias.split(sizes)))

    def _head(self, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return head_log_probs(F.linear(features, weight, bias), self.clusters(features))

    def _loss(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of targets [N] from features [N, D]."""
        return -self.token_log_probs(features, targets).mean()

    def token_log_probs(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The log-probability [N] of each target [N] after features [N, D]. The adaptive softmax scores only the
        head and, for the rows whose target is in a tail cluster, that cluster: never an [N, vocab] matrix."""
        if self.clusters is None:
            return -F.cross_entropy(self.decoder(features).float(), targets, reduction="none")
        cuts = self.cutoffs
        (frequent, bias), *tails = self._decoder_clusters()
        cluster = torch.bucketize(targets, torch.tensor(cuts[:-1], device=targets.device), right=True)
        head_target = torch.where(cluster == 0, targets, cuts[0] + cluster - 1)
        log_likelihood = self._head(features, frequent, bias).gather(1, head_target[:, None]).squeeze(1)
        for index, ((weight, bias), low) in enumerate(zip(tails, cuts), start=1):
            rows = (cluster == index).nonzero().squeeze(1)
            if rows.numel():
                tail = F.linear(features[rows], weight, bias).float().log_softmax(-1)
                log_likelihood = log_likelihood.index_add(0, rows, tail.gather(1, targets[rows, None] - low).squeeze(1))
        return log_likelihood

    def num_parameters(self) -> int:
        """Distinct trainable parameters (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())


def dropout_mask(shape: tuple[int, ...] | torch.Size, drop: float, like: torch.Tensor) -> torch.Tensor:
    """A dropout mask of `shape` in `like`'s dtype and device: 0 with probability `drop`, else 1 / (1 - drop).
    Uniform numbers compared with the rate: on a CPU, 3.6x faster than `bernoulli_` (6.3 against 23 ms for a
    2,600 x 650 matrix), the same distribution."""
    return torch.rand(shape, device=like.device).ge_(drop).div_(1 - drop).to(like.dtype)


def head_log_probs(frequent: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """The adaptive softmax's head: log-probabilities of the frequent words [..., C] and of each tail cluster."""
    return torch.cat([frequent, clusters], -1).float().log_softmax(-1)


def adaptive_log_probs(head: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
    """Every word's log-probability from the head's (`head_log_probs`) and each tail cluster's word scores: the one
    assembly of the adaptive softmax, for the model's `logits` and for `lmdemo.generation`'s packed decoder."""
    cutoff = head.size(-1) - len(tails)
    return torch.cat([head[..., :cutoff], *(head[..., cutoff + index, None] + tail.float().log_softmax(-1)
                                            for index, tail in enumerate(tails))], -1)
