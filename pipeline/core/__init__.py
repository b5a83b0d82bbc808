"""The floor of the project: config, run time, files, errors, progress, fingerprints.

Modules here import nothing of the project outside ``pipeline.core``; the libraries
(``data_manifests``, ``teacher``, ``student``) import only this part of ``pipeline``.
"""
