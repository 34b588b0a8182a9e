"""Unit groups discovered from a module's computation, so any linen module can grow.

:func:`couplings` traces ``model.apply(variables, x, ...)`` to a jaxpr whose inputs are the
flattened variables (each input is a known path) and follows *unit axes* through it:

* ``conv_general_dilated`` and ``dot_general`` with a parameter kernel make a new group (the
  kernel's output features are its *producer* axis) and consume the input's group (the
  kernel's input features are a *consumer* axis, ``flattened`` when the input was a
  channels-last flatten of a feature map);
* elementwise ops with a parameter operand (bias add, BatchNorm scale/bias/mean/var, in eval
  and in train mode, where the running averages are updated) attach that parameter's axis to
  the group as a producer;
* elementwise ops of two activations (a residual add) merge their groups;
* a lookup in a variable (``nn.Embed``'s gather) makes a new group from the table's kept
  axis;
* reshapes, transposes, broadcasts, slices, pools and reductions over other axes carry unit
  axes along; a max over units keeps them exact under any replication; a sum over a unit
  axis (LayerNorm's mean) marks the group ``uniform_only`` and must be normalised by the
  axis size (a mean) before it is used, so a softmax over features is refused (its sum
  counts replicas, which no widening undoes);
* a contraction of two activations (attention) keeps their shared batch axes and fixes
  the contracted ones (see :data:`CONTRACTED`): in ``einsum('nqhd,nkhd->nhqk', q, k)`` the
  heads axis ``h`` merges the query, key and value heads into one group whose units are
  whole heads (a copied head has the same logits, softmax and output; ``out``'s rows of it
  are divided among the copies), while ``d`` (query/key ``head_dim``) cannot grow; the
  value width (``v``'s ``head_dim``, consumed by the out projection only) is an ordinary
  group;
* ``jit``/``closed_call``/``custom_jvp_call``/``custom_vjp_call``/``checkpoint`` (remat)
  are followed into their sub-jaxprs.

Anything else that touches a unit axis raises a ``ValueError`` naming the primitive and the
parameters involved. Units that reach the network's output (the logits), are added to a
non-unit axis (e.g. the raw input) or are contracted between two activations cannot grow:
:func:`couplings` leaves their groups out; :func:`discover` lists them with the reason.

Modules: :mod:`~jnet2net.discover.api` (the entry points), :mod:`~jnet2net.discover.tracer`
(evaluating a jaxpr on abstract values), the rules by kind of op in
:mod:`~jnet2net.discover.shapes`, :mod:`~jnet2net.discover.arithmetic` and
:mod:`~jnet2net.discover.contractions`, the abstract values and primitive tables in
:mod:`~jnet2net.discover.values`, and the union-find resolved into groups in
:mod:`~jnet2net.discover.groups`.
"""

from jnet2net.discover.api import couplings, discover, first_use_order
from jnet2net.discover.groups import Discovery
from jnet2net.discover.values import CONTRACTED, ELEMENTWISE

__all__ = [
    "CONTRACTED",
    "ELEMENTWISE",
    "Discovery",
    "couplings",
    "discover",
    "first_use_order",
]
