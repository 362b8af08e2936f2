"""Model lifecycle: evaluate, visualise, register, promote, roll back, predict and serve.

dirl.lifecycle.evaluate   evaluate_stage, compare: AP / F1 / IoU beside the centred prior, figures
dirl.lifecycle.figures    the qualitative grid and the MDA attention-map figure
dirl.lifecycle.resolve    load_model_ref: weights file, run id or models:/ URI -> model
dirl.lifecycle.pyfunc     the MLflow pyfunc model (encoded image in, probability map PNG out)
dirl.lifecycle.release   register_stage, promote, rollback (aliases @challenger, @champion, @previous)
dirl.lifecycle.predict    predict_paths: masks and overlays for image files of any size
"""
