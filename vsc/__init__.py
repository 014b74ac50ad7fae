"""vsc: a thin training package for variational sparse coding with learned
thresholding (Fallah & Rozell, ICML 2022), built on the fused ops of
:mod:`vsc_kernels`.

* :mod:`vsc.data`    -- whitened natural-image patches (embedded scikit-image photos,
  Olshausen's IMAGES.mat, any image folder), cached on disk.
* :mod:`vsc.priors`  -- the priors of Table 1, one file each, one interface.
* :mod:`vsc.models`  -- the inference network of Table 3 and the linear generator.
* :mod:`vsc.train`   -- linear-generator training (FISTA and variational), checkpoints.
* :mod:`vsc.metrics` -- the metrics of sections 4.1, 4.2 and Appendix C.
* :mod:`vsc.datasets` -- images for the DNN generators (embedded digits, Fashion-MNIST,
  CelebA).
* :mod:`vsc.fid`     -- FID feature extractors (Inception-v3 from a weight file, or an
  offline classifier).
* :mod:`vsc.cli`     -- ``vsc train | eval | table``.
"""

__version__ = "0.1.0"
