"""Declarations of the dataset formats (``dataset.format``; :mod:`unseg.data.formats`: a format's function reads
one layout into the dataset's records)."""

from __future__ import annotations

from unseg.config.registry import declare

declare("dataset", "auto", "unseg.data.formats:auto_format",
        description=('A VOC-like folder (``JPEGImages/``, optional ``SegmentationClass/``, ``SegmentationObject/``, '
                     '``annotations/instances.json``, split files ``ImageSets/Segmentation/{train,val}.txt`` or '
                     '``{train,val}.txt``) or a plain folder of images; images in no split file are ``"unassigned"``, '
                     'every image is ``"all"`` without split files. Stored label ids are the class ids.'),
        schema={
    "image_dir": {"type": ["string", "null"], "default": None,
                  "description": "the image folder (relative to root); default root/JPEGImages when it exists, "
                                 "else root"},
    "recursive": {"type": "boolean", "default": False,
                  "description": "also index the images in subfolders of the image folder (VOC's label folders "
                                 "aside); image names (file stems) must then be unique across all folders, and two "
                                 "alike stop the index naming both files. false: such images are counted in the "
                                 "index log, not indexed"},
})


declare("dataset", "voc", "unseg.data.formats:voc_format",
        description=('PASCAL VOC 2012 (``root`` = ``VOC2012/`` or a folder above it): the images of the split files '
                     '``ImageSets/Segmentation/{split}.txt`` (default splits train and val; ``train_aug`` is read from'
                     ' ``ImageSets/SegmentationAug/`` or ``ImageSets/Segmentation/``, its labels from '
                     '``SegmentationClassAug/``), 21 classes with 255 void, instances from ``SegmentationObject/``.'),
        schema={})


declare("dataset", "coco", "unseg.data.formats:coco_format",
        description=('COCO 2017: images in ``root/{split}/`` (or ``root/images/{split}/``), instances in '
                     '``root/annotations/instances_{split}.json``; default split val2017. Crowd annotations stay '
                     'marked (pycocotools ignores detections on them); images without annotations are kept.'),
        schema={
    "classes": {"type": "string", "enum": ["80", "supercategories", "agnostic"], "default": "80",
                "description": "80: the 80 thing categories, renumbered 1..80 in COCO id order; supercategories: "
                               "COCO's 12 thing supercategories (the categories' supercategory field), numbered "
                               "1..12 in the order of their first category's id; agnostic: one category 'object' "
                               "(class-agnostic AP, as CutLER and Engstler et al. report)"},
    "subset": {"type": ["string", "null"], "default": None,
               "description": "an image-list file (relative to root): one image id or file name per line; only "
                              "those images are indexed (e.g. COCO20k's list of LOST / CutLER)"},
    "semantic": {"type": "boolean", "default": False,
                 "description": "rasterise semantic label maps from the instances (background 0, crowd regions "
                                "255 void), for the semantic metrics"},
})


declare("dataset", "cocostuff", "unseg.data.formats:cocostuff_format",
        description=('COCO-Stuff 164k: images in ``root/images/{split}/`` (or ``root/{split}/``), stuffthingmaps label'
                     ' PNGs in ``root/annotations/{split}/`` (or ``stuffthingmaps_trainval2017/{split}/``); default '
                     'split val2017.'),
        schema={
    "classes": {"type": "integer", "enum": [27, 171, 80], "default": 27,
                "description": "27: the COCO-Stuff super-categories (PiCIE / STEGO / TransFGU); 171: every used "
                               "class; 80: the things, stuff as background 0 (TransFGU's COCO-80)"},
    "subset": {"type": ["string", "null"], "default": None,
               "description": "an image-list file (relative to root), one file name or stem per line (e.g. the "
                              "curated lists of PiCIE / STEGO); only those images are indexed"},
})


declare("dataset", "cityscapes", "unseg.data.formats:cityscapes_format",
        description=('Cityscapes: ``root/leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with '
                     '``root/gtFine/{split}/{city}/*_gtFine_labelIds.png``; 27 classes (labelIds 7..33, the void ids '
                     'removed); default splits train and val. Image names drop the ``_leftImg8bit`` suffix.'),
        schema={})


declare("dataset", "lip", "unseg.data.formats:lip_format",
        description=('LIP (Look Into Person): ``{split}_images/`` and ``{split}_segmentations/`` at the root or inside'
                     ' ``TrainVal_images/`` and ``TrainVal_parsing_annotations/`` (as the archives unpack); default '
                     'splits train and val.'),
        schema={
    "classes": {"type": "integer", "enum": [19, 16, 5], "default": 19,
                "description": "19 parts, or TransFGU's merges into 16 and 5 (background 0 besides)"},
})


declare("dataset", "folder", "unseg.data.formats:folder_format",
        description=("Any folder of photos, searched recursively (hidden files and folders skipped). An image's name "
                     'is its path relative to the image folder, without the extension, with ``__`` for each folder '
                     'separator. Split: ``all``.'),
        schema={
    "images": {"type": "string", "default": ".", "description": "the image folder, relative to root (searched "
                                                                 "recursively)"},
    "masks": {"type": ["string", "null"], "default": None,
              "description": "a folder (relative to root) of masks with the images' relative paths and stems, any "
                             "image extension; an image without one is indexed without ground truth"},
    "mask_kind": {"type": "string", "enum": ["binary", "labels"], "default": "binary",
                  "description": "binary: figure/ground masks, any non-zero value is the foreground (class 1); "
                                 "labels: the values are class ids (0 background, 255 void)"},
})
