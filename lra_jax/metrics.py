"""clu metric collections of training and evaluation.

Both average over real examples only: `mask` is the batch's `valid` field, so
the rows that pad the last evaluation batch never count.
"""

# No `from __future__ import annotations`: clu builds a Collection from its
# annotations, which must stay classes rather than strings.
import flax
from clu import metrics


@flax.struct.dataclass
class ClassificationMetrics(metrics.Collection):
  """Mean cross-entropy and accuracy, from `loss` [batch], `logits`, `labels`, `mask`."""

  loss: metrics.Average.from_output("loss")
  accuracy: metrics.Accuracy
