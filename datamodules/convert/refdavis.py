"""Ref-DAVIS17 (DAVIS-2017 videos with the Khoreva et al. referring expressions).

Layout (``--root`` is the ``ref-davis`` folder prepared as in ReferFormer; other places of
``meta_expressions.json`` as in :mod:`datamodules.convert.video`)::

    <root>/meta_expressions/valid/meta_expressions.json   {"videos": {vid: {"expressions": {exp_id: {"exp",
                                                           "obj_id"}}, "frames": [names]}}}
    <root>/valid/JPEGImages/<vid>/<frame>.jpg
    <root>/valid/Annotations/<vid>/<frame>.png             DAVIS palette PNG, pixel value = object id, 255 = void

Records (task ``rvos``) exactly as for Ref-YouTube-VOS (:mod:`datamodules.convert.refytvos`): pixel value ``v`` is
object ``str(v)``, void pixels become the record's ``ignore`` region, ``id`` = ``exp_id``.
"""

from __future__ import annotations

from .refytvos import RefYouTubeVOSConverter


class RefDAVISConverter(RefYouTubeVOSConverter):
    """Ref-DAVIS17: the Ref-YouTube-VOS layout with DAVIS palette PNGs (255 = void).

    Arguments as :class:`~.video.MetaExpressionsConverter`.
    """

    name = "refdavis"
    default_maxcount = 30
