"""Every figure kddiag draws, from typed results, never recomputing a metric: an inspection's
(:mod:`~kddiag.plots.report`), a comparison's (:mod:`~kddiag.plots.compare`) and a monitored training
run's (:mod:`~kddiag.plots.training`); what they share in :mod:`~kddiag.plots._common`."""
