"""`similar`: past windows like a query window, found through FAISS, and what followed them
(docs/similar.md).

    source     the windows: raw z-normalized PAA vectors or a run's embed(x), read by the block loader
    index      `similar index`: the FAISS index, windows.h5, settings.json
    search     batched search under the overlap and past-only rules, exact re-rank
    outcomes   what followed each neighbour
    query      `similar query`: QueryConfig and run_query, results and the analog forecast file
    plot       the PNG of a query and its neighbours

Imports nothing from analysis.backtest (.importlinter holds the two independent).
"""
