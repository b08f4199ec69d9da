"""The HTTP server (``rlhf-rewards serve``): vLLM's pooling API plus verl's and OpenRLHF's reward routes.

One folder per route family, as vLLM's ``entrypoints/pooling/<family>/``: ``api_router`` (the routes: parse,
call serving, answer), ``protocol`` (the family's request and response models) and ``serving`` (its logic);
what they share is in ``base``. ``app`` assembles them around one ``ServedModel``, with the middlewares
(``auth``, ``limits``, ``metrics``), the error handlers (``errors``) and the batcher (``batcher``).
"""
