"""Evaluation numerics behind ``lowbit eval`` (and the accuracy benchmarks), one job per file:

    tsv          labelled text files (``text<TAB>label`` under a header), errors naming the line
    sentences    length-sorted batches of sentences; mean-pooled sentence embeddings
    probe        the frozen logistic-regression probe fitted on float embeddings
    stats        paired comparison of two classifiers: flips, McNemar p, interval of the
                 accuracy difference
    classify     accuracy of a float model and its quantized twin (their head, or the probe)
    perplexity   strided-window perplexity of a causal LM
    engines      torch, onnxruntime and TVM modules behind one call, batches fitted to fixed
                 input shapes

Import the modules themselves (``from lowbit.eval.probe import Probe``); this package imports
nothing, so ``lowbit --help`` stays fast.
"""
