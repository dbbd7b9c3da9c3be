"""Find parameters that a loss reads outside the calls of the layers that own them.

The engine captures a layer's per-sample gradients at the outputs of its calls, so a
parameter that also reaches the loss another way (``emb(t) @ emb.weight.T``: the embedding
runs, and its weight is read again directly as the head) would get only its layer's share.
This module finds such reads in the autograd graph, before the backward pass:

1. the nodes *inside* a layer call are those reachable backwards from the call's outputs
   without passing through the nodes of its inputs;
2. a parameter's leaf node (``AccumulateGrad``) reached from a node that is not inside a
   call of one of the parameter's owning layers is a read outside them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor
from torch.autograd.graph import Node, get_gradient_edge
from torch.utils._pytree import tree_flatten

__all__ = ["first_reaching", "nodes_inside_call", "reads_outside_owners"]


def nodes_inside_call(inputs: Any, output_nodes: Iterable[Node | None]) -> set[Node]:
    """Autograd nodes created by one layer call.

    Args:
        inputs: The call's ``(args, kwargs)`` (any pytree); its tensors that require grad
            bound the search.
        output_nodes: The gradient nodes of the call's outputs.

    Returns:
        Every node reachable backwards from ``output_nodes`` that is not the node of an
        input (nor behind one); the leaves of the parameters the call read are among them.

    """
    stop = {get_gradient_edge(t).node for t in tree_flatten(inputs)[0]
            if isinstance(t, Tensor) and t.requires_grad}
    inside: set[Node] = set()
    todo = [n for n in output_nodes if n is not None]
    while todo:
        node = todo.pop()
        if node in stop or node in inside:
            continue
        inside.add(node)
        todo.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return inside


def reads_outside_owners(
    loss: Tensor, params: Mapping[str, Tensor], owned: Mapping[str, set[Node]]
) -> list[str]:
    """Names of ``params`` the loss reads through a node outside their owners' calls.

    Args:
        loss: The scalar loss (its graph is walked, not run).
        params: Parameter name -> parameter, the ones to check.
        owned: Parameter name -> the nodes inside every call of the layers that own it
            (see :func:`nodes_inside_call`); a missing name owns no node.

    Returns:
        The names, in the order of ``params``.

    """
    if loss.grad_fn is None:
        return []
    name_of = {id(p): n for n, p in params.items()}
    outside: set[str] = set()
    seen: set[Node] = set()
    todo: list[Node] = [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)  # only AccumulateGrad nodes have one
            if isinstance(variable, Tensor):
                name = name_of.get(id(variable))
                if name is not None and node not in owned.get(name, ()):
                    outside.add(name)
            else:
                todo.append(nxt)
    return [n for n in params if n in outside]


def first_reaching(starts: Iterable[tuple[str, Node]], targets: set[Node]) -> str | None:
    """Name of the first start node from which a node of ``targets`` is reachable backwards.

    Args:
        starts: ``(name, node)`` pairs, searched in order.
        targets: The nodes to find.

    Returns:
        The name, or None when no start reaches a target. Each node is visited at most once
        over all the starts.

    """
    cleared: set[Node] = set()  # nodes from which no target is reachable
    for name, start in starts:
        todo, seen = [start], set()
        while todo:
            node = todo.pop()
            if node in targets:
                return name
            if node in cleared or node in seen:
                continue
            seen.add(node)
            todo.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
        cleared |= seen
    return None
