"""Beam's ``DaskRunner`` (``apache_beam.runners.dask``), with the translation defects that make it
give wrong results on this pipeline fixed, and a local two-process Dask cluster to run it on.

Beam 2.77's DaskRunner is a proof of concept. On our preprocessing it is wrong in three ways,
each reproduced against the unpatched runner while writing this module:

1. **Tagged outputs are mixed.** A multi-output ``ParDo`` (``.with_outputs(...)``) becomes one Dask
   bag holding every output, and every consumer reads that whole bag: the consumer of
   ``outputs.dead_letter`` also receives the events. Fixed here: each consumer reads only the
   elements of the output it consumes (:func:`_select_output`).
2. **Only the last sink runs.** ``run_pipeline`` computes the bag of the last transform visited
   and assumes it depends on everything else; a pipeline with several sinks (ours writes three
   splits, the vocabulary, the dead letters and the counters) silently skips all but one.
   Fixed here: every leaf (a transform whose outputs nothing consumes) is computed.
3. **Side inputs are recomputed per bundle.** A side input is a lazy bag iterated inside every
   task that uses it, so the whole upstream graph (read, group, count) runs again for every
   partition of the consumer. Fixed here: a side input is reduced to one value in the graph and
   passed to the tasks as an argument, computed once.

Beam issue #29365 (GroupByKey on Dask "only works if the key type is an integer", string keys
lose elements) came from partitioning the shuffle by Python's ``hash``, which differs between
worker processes for strings. With dask >= 2024 the bag shuffle partitions by ``tokenize`` (stable
across processes) and ``distributed`` pins ``PYTHONHASHSEED`` in its workers, so string keys group
correctly; ``GroupByKey`` here is the upstream one, and the DirectRunner comparison test
(``tests/components/preprocessing/test_dask_runner.py``) checks every group (users keyed by
string id, items counted by string id, counters keyed by name) against the DirectRunner's.
Keys must still be values whose ``tokenize`` is deterministic (str, int, tuples of them): ours
are.

:func:`local_cluster` starts a ``dask.distributed.LocalCluster`` of worker processes listening on
127.0.0.1 only, and :func:`dask_beam_args` gives the Beam options that run a pipeline on it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Dict, Iterator, List, Sequence

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnSignature, _OutputHandler
from apache_beam.runners.dask import dask_runner as upstream
from apache_beam.runners.dask import transform_evaluator as te
from apache_beam.transforms.sideinputs import SideInputMap

RUNNER = f"{__name__}.DaskRunner"


def _select_output(partition, tag):
    """The elements of one output of a multi-output ``ParDo`` bag partition: ``tag`` ``None``
    is the main output (plain values), otherwise the ``TaggedOutput`` values of that tag."""
    out = []
    for element in partition:
        if isinstance(element, beam.pvalue.TaggedOutput):
            if element.tag == tag:
                out.append(element.value)
        elif tag is None:
            out.append(element)
    return out


def _drain(partition) -> List[int]:
    """Consumes a leaf partition and returns only its size (results stay on the workers)."""
    return [sum(1 for _ in partition)]


def _concat(partitions):
    return [x for part in partitions for x in part]


@dataclasses.dataclass
class _SideInputSpec:
    view_type: type
    view_options: dict
    window_fn: object


def _apply_dofn_with_side_inputs(items, invoker_args, invoker_kwargs, receivers,
                                 specs: Sequence[_SideInputSpec], *side_values):
    """``transform_evaluator.apply_dofn_to_bundle`` with side inputs given as computed values,
    keeping the tag of each tagged output."""
    side_inputs = [SideInputMap(spec.view_type, spec.view_options,
                                [te.get_windowed_value(v, spec.window_fn) for v in values])
                   for spec, values in zip(specs, side_values)]
    # A private copy per bundle: the receivers collect this bundle's outputs only, even when a
    # worker runs bundles of the same task graph in threads.
    invoker_args, receivers = copy.deepcopy((invoker_args, receivers))
    invoker = te.DoFnInvoker.create_invoker(
        *invoker_args, **dict(invoker_kwargs, side_inputs=side_inputs))
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    # Unlike upstream, a tagged output keeps its tag (fix 1): (TaggedOutput(tag, windowed value)
    # or a main output's value).
    return [beam.pvalue.TaggedOutput(out.tag, out.value)
            if isinstance(out, beam.pvalue.TaggedOutput) else out.value
            for out in receivers.values]


class _ParDo(te.DaskBagOp):
    """``transform_evaluator.ParDo`` with side inputs passed as computed values (fix 3)."""

    def apply(self, input_bag, side_inputs=None):
        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        receivers = te.OneReceiver()
        invoker_args = [
            DoFnSignature(transform.fn),
            _OutputHandler(window_fn=window_fn, main_receivers=receivers[None],
                           tagged_receivers=receivers, per_element_output_counter=None,
                           output_batch_converter=None, process_yields_batches=False,
                           process_batch_yields_elements=False),
        ]
        invoker_kwargs = dict(context=DoFnContext(transform.label, state=None),
                              side_inputs=[], input_args=list(args), input_kwargs=kwargs,
                              user_state_context=None,
                              bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
        specs, values = [], []
        for view, bag in side_inputs or []:
            specs.append(_SideInputSpec(type(view), view._view_options(),
                                        view._window_mapping_fn))
            # As a Delayed without graph optimisation: passing the Item itself makes dask optimise
            # the whole upstream graph at every use, which explodes with chained side inputs.
            values.append(bag.reduction(list, _concat, split_every=False)
                          .to_delayed(optimize_graph=False))
        return input_bag.map(te.get_windowed_value, window_fn).map_partitions(
            _apply_dofn_with_side_inputs, invoker_args, invoker_kwargs, receivers, specs, *values)


_TRANSLATIONS = dict(te.TRANSLATIONS)
_TRANSLATIONS[beam.ParDo] = _ParDo


@dataclasses.dataclass
class _Visitor(PipelineVisitor):
    """Translates the pipeline to Dask bags, one per applied transform."""

    bag_kwargs: dict
    bags: Dict[AppliedPTransform, object] = dataclasses.field(default_factory=dict)
    consumed: set = dataclasses.field(default_factory=set)

    def _input_bag(self, pcoll):
        producer = pcoll.producer
        bag = self.bags[producer]
        self.consumed.add(producer)
        if isinstance(producer.transform, beam.ParDo):
            # A ParDo's bag holds all its outputs; the main one has tag None (fix 1).
            bag = bag.map_partitions(_select_output, pcoll.tag)
        return bag

    def visit_transform(self, node: AppliedPTransform) -> None:
        op = _TRANSLATIONS.get(node.transform.__class__, te.NoOp)(node, bag_kwargs=self.bag_kwargs)
        inputs = [p for p in node.inputs if not isinstance(p, pvalue.PBegin)]
        bag_inputs = [self._input_bag(p) for p in inputs if p.producer in self.bags]
        if not inputs:  # a root (Create, Impulse): its input is PBegin
            input_bag = None
        elif len(bag_inputs) == 1 and not isinstance(op, te.Flatten):
            input_bag = bag_inputs[0]
        else:
            input_bag = bag_inputs
        side = []
        for si in node.side_inputs:
            side.append((si, self._input_bag(si.pvalue)))
        if isinstance(op, _ParDo):
            self.bags[node] = op.apply(input_bag, side)
        else:
            self.bags[node] = op.apply(input_bag=input_bag, side_inputs=None)

    def leaves(self) -> list:
        return [bag for node, bag in self.bags.items() if node not in self.consumed]


class DaskRunner(upstream.DaskRunner):
    """Beam's ``DaskRunner`` with the three fixes of this module's docstring.

    Options are the upstream ones (``--dask_client_address``, ``--dask_npartitions``, ...);
    use it as ``--runner=components.preprocessing.dask_runner.DaskRunner``.
    """

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        dask_options = options.view_as(upstream.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = upstream.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        pipeline.replace_all(upstream.dask_overrides())
        visitor = _Visitor(bag_kwargs)
        pipeline.visit(visitor)
        leaves = [leaf.map_partitions(_drain) for leaf in visitor.leaves()]  # fix 2
        futures = client.compute(list(dask.optimize(*leaves)))
        return _Result(client, futures)


@dataclasses.dataclass
class _Result(upstream.DaskRunnerResult):
    """Closes the client once the pipeline is done (the upstream result leaves it open)."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            self.client.close()


@contextlib.contextmanager
def local_cluster(workers: int = 2, threads_per_worker: int = 1,
                  memory_limit: str = "auto") -> Iterator[str]:
    """A ``dask.distributed.LocalCluster`` of ``workers`` processes on 127.0.0.1 (no other
    interface, no dashboard); yields the scheduler address and shuts the cluster down after."""
    from dask.distributed import LocalCluster

    if workers < 1:
        raise ValueError(f"need at least one Dask worker, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                           processes=True, host="127.0.0.1", dashboard_address=None,
                           memory_limit=memory_limit)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def dask_beam_args(scheduler_address: str, partitions: int = 0) -> List[str]:
    """Beam options that run a pipeline on the Dask scheduler at ``scheduler_address``."""
    args = [f"--runner={RUNNER}", f"--dask_client_address={scheduler_address}"]
    if partitions:
        args.append(f"--dask_npartitions={partitions}")
    return args


RUNNERS = ("direct", "dask")


@contextlib.contextmanager
def runner_beam_args(runner: str, dask_workers: int = 2,
                     extra: Sequence[str] = ()) -> Iterator[List[str]]:
    """The Beam options for ``runner`` followed by ``extra`` (the user's own options win).

    ``"direct"``: ``extra`` alone (the DirectRunner unless it names another runner).
    ``"dask"``: starts a :func:`local_cluster` of ``dask_workers`` processes for the duration and
    runs on it with ``2 * dask_workers`` partitions (so each worker has work while another
    shuffles).
    """
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {RUNNERS}, got {runner!r}")
    if runner == "direct":
        yield list(extra)
        return
    with local_cluster(dask_workers) as address:
        yield dask_beam_args(address, partitions=2 * dask_workers) + list(extra)
