module ScoreSde.Tests.ImageCliTests

open System
open System.IO
open Expecto
open ScoreSde
open ScoreSde.Tests.Common
open ScoreSde.Tests.DataFileTests
open ScoreSde.Tests.ImageDataTests
open ScoreSde.Tests.CliTests

// The command line sets libtorch's thread count (process-wide): run one at a time.
[<Tests>]
let tests =
    testSequenced
    <| testList
        "Command line: images"
        [ test "classifier trains on an MNIST-format directory, reports its accuracy and saves itself" {
              use dataTemp = tempDir "clicls-data"
              let data = dataTemp.Path
              writeSplit data "train" 40 12 12 true
              writeSplit data "t10k" 20 12 12 false
              use outTemp = tempDir "clicls"
              let out = Path.Combine(outTemp.Path, "classifier")
              let log =
                  cliOk
                      [ "classifier"
                        "--data-dir"
                        data
                        "--out"
                        out
                        "--epochs"
                        "1"
                        "--batch-size"
                        "8"
                        "--seed"
                        "3" ]
              Expect.stringContains log "test accuracy" "summary line"
              Expect.stringContains log "on 20 images" "evaluated on the test split"
              use loaded = ClassifierFile.load out
              Expect.equal loaded.Classifier.Config.Classes 10 "labels 0..9 give 10 classes"
              Expect.equal loaded.Pixels PixelRange.Centred "default pixel range"
              Expect.isTrue (loaded.Training.ContainsKey "testAccuracy") "accuracy stored"
              // the Frechet distance of the test images, written as samples in the classifier's range,
              // to the test split is 0 (quantising exact levels gives them back); train vs test is not
              let floor = cliOk [ "frechet"; "--classifier"; out; "--data-dir"; data ]
              Expect.stringContains floor "the training split (40 images) and the test split (20 images)" "train vs test"
              use test = FashionMnist.load data Split.Test
              use samplesTemp = tempDir "clicls-samples"
              let samples = Path.Combine(samplesTemp.Path, "s.npy")
              use x = ImageSet.batch PixelRange.Centred TorchSharp.torch.float32 (TorchSharp.torch.arange 20L) test
              DataFile.save samples x
              let same = cliOk [ "frechet"; "--classifier"; out; "--data-dir"; data; "--samples"; samples ]
              Expect.stringContains same "Frechet distance 0.000 between" "samples = the test split"
              let firstTen = cliOk [ "frechet"; "--classifier"; out; "--data-dir"; data; "--samples"; samples; "--n"; "10" ]
              Expect.stringContains firstTen "(10 images) and the test split (10 images)" "--n"
          }

          test "classifier without the dataset says how to install it, in one line" {
              use emptyTemp = tempDir "clicls-empty"
              let empty = emptyTemp.Path
              cliFails [ "classifier"; "--data-dir"; empty; "--out"; Path.Combine(empty, "c") ] "apt-get install dataset-fashion-mnist"
          }
          test "train --dataset fashion-mnist trains a U-Net with checkpoints; --resume after a kill gives the same losses and weights" {
              use dataTemp = tempDir "clitrain-data"
              let data = dataTemp.Path
              writeSplit data "train" 24 8 8 true
              use outTemp = tempDir "clitrain"
              let run = Path.Combine(outTemp.Path, "run")
              let args =
                  [ "train"
                    "--dataset"
                    "fashion-mnist"
                    "--data-dir"
                    data
                    "--net"
                    "unet"
                    "--width"
                    "8"
                    "--channel-mults"
                    "1,2"
                    "--blocks"
                    "1"
                    "--steps"
                    "4"
                    "--batch-size"
                    "4"
                    "--warmup"
                    "1"
                    "--class-conditional"
                    "--label-dropout"
                    "0.25"
                    "--sde"
                    "subvp"
                    "--checkpoint-every"
                    "2"
                    "--log-every"
                    "1"
                    "--seed"
                    "3" ]
              let log = cliOk (args @ [ "--out"; run ])
              Expect.stringContains log "class-conditional (10 classes, label dropout 0.25) U-Net" "what is trained"
              Expect.stringContains log "step 4/4  loss" "status lines"
              Expect.stringContains log "images/s" "throughput"
              Expect.stringContains log "trained 4 steps (to step 4)" "summary"
              let losses = File.ReadAllText(Path.Combine(run, "losses.csv"))
              let weights = File.ReadAllBytes(Path.Combine(run, ModelFile.weightsFile))
              Expect.equal (losses.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length) 5 "header and 4 losses"
              use model = ModelFile.loadNative run
              Expect.equal (Sde.name model.Info.Sde) "subvp" "the SDE stored"
              Expect.equal ((model.Network :?> UNet).Config.Classes) 10 "class-conditional"
              cliFails (args @ [ "--out"; run ]) "already holds a training run"
              // a kill after step 3: the newest checkpoint is step 2
              let ckpt = Path.Combine(run, ImageCheckpoint.folder)
              Directory.Delete(Path.Combine(ckpt, "step-00000004"), true)
              File.WriteAllText(Path.Combine(ckpt, ImageCheckpoint.latestFile), "step-00000002")
              let resumed = cliOk [ "train"; "--resume"; run ]
              Expect.stringContains resumed "at step 2 of 4" "resumed at the checkpoint"
              Expect.equal (File.ReadAllText(Path.Combine(run, "losses.csv"))) losses "the same loss curve"
              Expect.equal (File.ReadAllBytes(Path.Combine(run, ModelFile.weightsFile))) weights "the same EMA weights"
              cliFails [ "train"; "--resume"; run; "--dataset"; "ring" ] "leave out --dataset"
              cliFails [ "train"; "--resume"; outTemp.Path ] "holds no checkpoint"
              cliFails
                  [ "train"
                    "--dataset"
                    "fashion-mnist"
                    "--data-dir"
                    data
                    "--label-dropout"
                    "0.1"
                    "--out"
                    run + "2" ]
                  "needs --class-conditional"
              cliFails [ "train"; "--dataset"; "fashion-mnist"; "--data-dir"; data; "--net"; "mlp"; "--out"; run + "2" ] "--net unet"
              cliFails [ "train"; "--dataset"; "ring"; "--net"; "unet"; "--out"; run + "2" ] "--net unet trains on images"
          } ]
