"""Questions asked of a graph: agreement with the module it came from (``agreement``, torch) and SAT
robustness proofs (``robustness``, PySAT). Import the module you need: neither loads the other's dependency."""
