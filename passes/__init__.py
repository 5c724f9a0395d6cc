"""The pass families, one package each (``cleanup``, ``fusion``, ``quantize``, ``prune``,
``distill``, ``ensemble``); :mod:`.registry` is the one list of them."""
