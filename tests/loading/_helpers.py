"""Helpers shared by the loading tests."""
ARCH = "kd_test_archs:mlp"  # the conftest ``archs`` fixture's module


def same_weights(module, reference):
    got, want = module.state_dict(), reference.state_dict()
    return set(got) == set(want) and all(got[k].equal(want[k]) for k in want)
