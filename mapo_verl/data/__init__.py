"""Audio multiple-choice data: record parsing, prompt format, audio decoding, veRL dataset class.

:mod:`mapo_verl.data.mcqa` and :mod:`mapo_verl.data.audio` need only numpy;
:mod:`mapo_verl.data.dataset` (the veRL ``RLHFDataset`` subclass) imports veRL.
"""
