"""What a method needs from the training data and the entry point, declared on its class."""


class EntryPointNeeds:
    """Mixin of class attributes that :mod:`solo_stablerep.pretrain` reads before it builds the
    model or the data (solo-learn's own methods have none: they get the defaults below, except
    ``wmse`` and ``mae``, which solo-learn itself lets use any number of large crops).

    Attributes:
        any_number_of_large_crops (bool): the method takes any number of large crops per item
            (solo-learn's ``main_pretrain.py`` insists on exactly 2). Defaults to False.
        needs_captions (bool): each training batch must be ``[indexes, views, targets,
            tokens]``, ``tokens`` being the CLIP token ids of each item's caption; only
            ``data.dataset: synthetic`` carries captions. Defaults to False.
    """

    any_number_of_large_crops: bool = False
    needs_captions: bool = False
