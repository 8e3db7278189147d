"""Reading finished results back: benchmark tables (`harness report`), submissions (`submit`), the regression
gate (`regress`) and paired significance (`compare`). Nothing here runs a model."""
