"""`backtest`: signals and forecasts scored as a factor (IC, quantiles, turnover) and traded as
portfolios over time-aligned blocks of many sessions (docs/backtest.md).

    inputs     the prices, predictions and signals a run reads, checked
    panel      time-aligned (T, N) blocks on the union of the sessions' calendars
    returns    prices carried from the past, forward returns
    signals    RSI / momentum / reversal / ... computed in a process pool
    factor     IC, rank IC, quantile returns, turnover, coverage
    portfolio  topk, longshort, threshold: drift, rebalancing, costs
    stats      streamed moments, performance, drawdown
    report     report.json, CSV, PNG, TensorBoard
    run        BacktestConfig and run_backtest: the walk that drives them

Imports nothing from analysis.similar (.importlinter holds the two independent).
"""
