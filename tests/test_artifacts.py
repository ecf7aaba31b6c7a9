"""Merging a per-neuron artifact with the neurons an earlier run stored under the same key."""

from __future__ import annotations

from dnd.artifacts import Concepts, Exemplars, NeuronConcepts, NeuronExemplars, TokenUsage


def usage(tokens: int) -> TokenUsage:
    return TokenUsage(prompt_tokens=tokens, completion_tokens=1, requests=1)


def concepts(*entries: tuple[int, str, int], total: int) -> Concepts:
    neurons = [NeuronConcepts(neuron=n, concepts=[c], usage=usage(t)) for n, c, t in entries]
    return Concepts(layer="l", llm="x", neurons=neurons, usage=TokenUsage(prompt_tokens=total, completion_tokens=2))


def test_new_entries_win_and_the_others_are_kept_in_neuron_order():
    earlier = Exemplars(layer="l", cropped=True, neurons=[NeuronExemplars(neuron=n, candidates=n) for n in (0, 2, 5)])
    fresh = Exemplars(layer="l", cropped=True, neurons=[NeuronExemplars(neuron=n, candidates=10 + n) for n in (1, 2)])
    merged = fresh.merged_over(earlier)
    assert [(e.neuron, e.candidates) for e in merged.neurons] == [(0, 0), (1, 11), (2, 12), (5, 5)]
    assert merged.neurons[0] is earlier.neurons[0]  # kept entries are the earlier objects, written back unchanged
    assert fresh.neurons == [NeuronExemplars(neuron=1, candidates=11), NeuronExemplars(neuron=2, candidates=12)]


def test_concept_usage_adds_new_neurons_and_replaces_recomputed_ones():
    earlier = concepts((0, "a", 5), (1, "b", 7), total=12)
    # Neurons added: their run's usage adds to the earlier runs'.
    assert concepts((2, "c", 4), total=4).merged_over(earlier).usage.prompt_tokens == 16
    # Neurons recomputed with the same (cached) replies: the total stays as it was.
    assert concepts((0, "a", 5), (1, "b", 7), total=12).merged_over(earlier).usage.prompt_tokens == 12
    # A recomputed neuron whose replies changed (e.g. a failure retried) contributes the difference.
    assert concepts((1, "b", 9), total=9).merged_over(earlier).usage.prompt_tokens == 14
    # Both at once: the change of neuron 1, plus what this run's total holds beyond neuron 1's own usage.
    assert concepts((1, "b", 9), (2, "c", 4), total=13).merged_over(earlier).usage.prompt_tokens == 12 + 2 + 4
