"""Model lifecycle: evaluate, visualise, register, promote, roll back, predict and serve.

The evaluate and register stages (:mod:`dirl.stages.evaluate`, :mod:`dirl.stages.register`) are recipes of these.

dirl.lifecycle.evaluate   eval_sets, score_sets, log_evaluation, compare: AP / F1 / IoU beside the centred prior
dirl.lifecycle.figures    the qualitative grid and the MDA attention-map figure
dirl.lifecycle.resolve    load_model_ref: weights file, run id or models:/ URI -> model
dirl.lifecycle.pyfunc     the MLflow pyfunc model (encoded image in, probability map PNG out)
dirl.lifecycle.release   version_tags, model_to_register, promote, rollback (@challenger, @champion, @previous)
dirl.lifecycle.predict    predict_paths: masks and overlays for image files of any size
"""
